"""Audio quality and delay of relay's transcoding path for Gemini Live, against float references.

    python -m bench.transcode_quality [--json]

Gemini Live hears PCM16 at 16 kHz and speaks PCM16 at 24 kHz, so relay transcodes each way:
caller μ-law 8 kHz → ``ulaw_to_pcm16`` → ``Resampler(8000, 16000)`` → [model] → 24 kHz →
``Resampler(24000, 8000)`` → ``pcm16_to_ulaw`` → caller. This runs that path exactly as a call
does (20 ms caller chunks, 40 ms chunks of 24 kHz back, one resampler per direction carrying
its state), with an ideal model in the middle that re-renders what it heard at 24 kHz, and
compares what comes out with the float signal put in. Figures:

* **SNR** (dB) after aligning for the path's delay: μ-law alone (the ceiling), each resampler
  on its own (so the figures show where the loss is), and the round trip, as is and with its
  gain at the tone's frequency matched, on a 1004 Hz tone at -10 dBFS and on
  ``relay.sim.audio.speak`` audio;
* **THD+N** of the tone after the round trip; the **response** (dB) of each stage at a few
  voice-band frequencies, which says where the SNR goes;
* the **delay**: measured by cross-correlation on white noise, beside the filters' group delay,
  and what the chunking holds back on top of it (nothing: each chunk's output is returned at once).

The references are ideal band-limited resampling (FFT), in float64; numpy only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from types import ModuleType

import numpy as np

from relay import fastpath
from relay._codec_py import _DOWN_TAPS
from relay.sim.audio import speak

CALLER_RATE = 8000
MODEL_IN_RATE = 16000  # Gemini Live's input
MODEL_OUT_RATE = 24000  # Gemini Live's output
CALLER_CHUNK_MS = 20  # one Twilio media frame
MODEL_CHUNK_MS = 40  # one audio chunk from the model

# The telephone test tone: 1 kHz moved off a submultiple of 8 kHz. At exactly 1000 Hz the tone
# repeats every 8 samples, so μ-law's error would be 8 fixed values (pure harmonics of one
# phase), not the quantization noise a voice meets.
TONE_HZ = 1004.0
TONE_DBFS = -10.0  # peak level; a full-scale sine is 0 dBFS (AES17)
TONE_SECONDS = 1.0
SPEECH_TEXT = "thank you for calling the clinic how can I help you today"
NOISE_DBFS = -20.0  # RMS of the white-noise delay probe
NOISE_SEED = 1004

PAD_MS = 50  # silence around every signal: longer than any delay, so the FFT's wrap-around meets silence
FADE_MS = 10  # the tone fades in and out, so its ends do not splash the band-limited references
EDGE_MS = 30  # left out of every figure at both ends: the fades, and the resamplers' ramp from silence
RESPONSE_HZ = (300.0, 1000.0, 2000.0, 3000.0, 3400.0)
CORRELATION_UPSAMPLE = 32  # cross-correlation resolution: 1/32 of a sample
MAX_DELAY_MS = 5.0  # the cross-correlation's search range


# ---------------------------------------------------------------- signals (float64, int16 scale)


def samples(ms: float, rate: int) -> int:
    return round(ms * rate / 1000)


def padded(x: np.ndarray, rate: int = CALLER_RATE) -> np.ndarray:
    """``x`` with ``PAD_MS`` of silence on both sides."""
    pad = np.zeros(samples(PAD_MS, rate))
    return np.concatenate([pad, x, pad])


def tone(freq_hz: float = TONE_HZ, dbfs: float = TONE_DBFS, seconds: float = TONE_SECONDS) -> np.ndarray:
    """A sine at 8 kHz with raised-cosine fades, padded with silence."""
    n = round(seconds * CALLER_RATE)
    x = 32768 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq_hz * np.arange(n) / CALLER_RATE)
    fade = samples(FADE_MS, CALLER_RATE)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    x[:fade] *= ramp
    x[n - fade :] *= ramp[::-1]
    return padded(x)


def speech(text: str = SPEECH_TEXT) -> np.ndarray:
    """``speak(text)`` decoded: the caller's own samples, already μ-law; nothing finer exists."""
    return padded(pcm_of(fastpath.ulaw_to_pcm16(speak(text))))


def white_noise(seconds: float = TONE_SECONDS) -> np.ndarray:
    """Seeded white noise at 8 kHz: flat to 4 kHz, so its cross-correlation has one sharp peak."""
    rng = np.random.default_rng(NOISE_SEED)
    return padded(rng.normal(0.0, 32768 * 10 ** (NOISE_DBFS / 20), round(seconds * CALLER_RATE)))


def pcm_of(data: bytes) -> np.ndarray:
    """PCM16 little-endian bytes as float64 samples."""
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def pcm_bytes(x: np.ndarray) -> bytes:
    """Float samples rounded and clamped to PCM16 little-endian bytes."""
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------- float references


def ideal_resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum. The signal is taken as
    periodic; every signal here starts and ends in silence, so the wrap-around joins silence."""
    n = len(x)
    if (n * dst_rate) % src_rate:
        raise ValueError(f"{n} samples at {src_rate} Hz are not a whole number at {dst_rate} Hz")
    m = n * dst_rate // src_rate
    spectrum = np.fft.rfft(x)
    out = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(spectrum), len(out))
    out[:k] = spectrum[:k]
    # A Nyquist bin stands for +f and -f at once: halve it where it becomes an ordinary bin;
    # where an ordinary bin becomes the new Nyquist bin, +f and -f both land on it (as on
    # sampling, which keeps a cosine there and loses a sine).
    if m > n and n % 2 == 0:
        out[n // 2] *= 0.5
    if m < n and m % 2 == 0:
        out[m // 2] = 2 * out[m // 2].real
    return np.fft.irfft(out, m) * (m / n)


def delayed(x: np.ndarray, delay: float) -> np.ndarray:
    """``x`` delayed by ``delay`` samples, fractions included (an ideal band-limited delay)."""
    n = len(x)
    spectrum = np.fft.rfft(x)
    nyquist = spectrum[-1].real
    spectrum *= np.exp(-2j * np.pi * np.arange(n // 2 + 1) * delay / n)
    if n % 2 == 0:  # on the sample grid, cos(pi t) delayed keeps only its cosine part
        spectrum[-1] = nyquist * np.cos(np.pi * delay)
    return np.fft.irfft(spectrum, n)


def model(pcm16k: bytes) -> bytes:
    """The stand-in model: re-renders what it heard at 24 kHz, ideally, as PCM16."""
    return pcm_bytes(ideal_resample(pcm_of(pcm16k), MODEL_IN_RATE, MODEL_OUT_RATE))


def ulaw_once(x: np.ndarray) -> np.ndarray:
    """``x`` through one μ-law encode and decode (relay's G.711 tables)."""
    return pcm_of(fastpath.ulaw_to_pcm16(fastpath.pcm16_to_ulaw(pcm_bytes(x))))


# ---------------------------------------------------------------- relay's path, chunked as a call


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def chunk_bytes(ms: int, rate: int) -> int:
    """PCM16 bytes in ``ms`` of audio at ``rate``."""
    return 2 * samples(ms, rate)


def streamed(process: Callable[[bytes], bytes], data: bytes, size: int) -> bytes:
    return b"".join(process(chunk) for chunk in chunks(data, size))


def relay_up(pcm8k: bytes, impl: ModuleType = fastpath) -> bytes:
    """8 → 16 kHz as the caller's audio goes up: one resampler, a call of it per 20 ms frame."""
    up = impl.Resampler(CALLER_RATE, MODEL_IN_RATE)
    return streamed(up.process, pcm8k, chunk_bytes(CALLER_CHUNK_MS, CALLER_RATE))


def relay_down(pcm24k: bytes, impl: ModuleType = fastpath) -> bytes:
    """24 → 8 kHz as the model's audio comes down, in its 40 ms chunks."""
    down = impl.Resampler(MODEL_OUT_RATE, CALLER_RATE)
    return streamed(down.process, pcm24k, chunk_bytes(MODEL_CHUNK_MS, MODEL_OUT_RATE))


def relay_round_trip(caller_ulaw: bytes, impl: ModuleType = fastpath) -> bytes:
    """The caller's μ-law through relay's path to the ideal model and back: μ-law to the caller."""
    up = impl.Resampler(CALLER_RATE, MODEL_IN_RATE)
    frames = chunks(caller_ulaw, samples(CALLER_CHUNK_MS, CALLER_RATE))  # μ-law: a byte a sample, 160 a frame
    heard = b"".join(up.process(impl.ulaw_to_pcm16(frame)) for frame in frames)
    down = impl.Resampler(MODEL_OUT_RATE, CALLER_RATE)
    spoken = chunks(model(heard), chunk_bytes(MODEL_CHUNK_MS, MODEL_OUT_RATE))
    return b"".join(impl.pcm16_to_ulaw(down.process(chunk)) for chunk in spoken)


def round_trip_pcm(x: np.ndarray) -> np.ndarray:
    """What the caller hears back for ``x`` (8 kHz float), decoded."""
    return pcm_of(fastpath.ulaw_to_pcm16(relay_round_trip(fastpath.pcm16_to_ulaw(pcm_bytes(x)))))


def held_back_samples(src_rate: int, dst_rate: int, pcm: bytes, chunk_ms: int, impl: ModuleType = fastpath) -> int:
    """The most output samples that a chunk's input made due but that chunk did not return: the
    buffering the chunking adds on top of the filter's delay (in output samples)."""
    resampler = impl.Resampler(src_rate, dst_rate)
    fed = returned = worst = 0
    for chunk in chunks(pcm, chunk_bytes(chunk_ms, src_rate)):
        fed += len(chunk) // 2
        returned += len(resampler.process(chunk)) // 2
        due = -(-fed * dst_rate // src_rate)  # ceil: an output is due once its last input is in
        worst = max(worst, due - returned)
    return worst


def held_back_ms(pcm8k: bytes) -> dict[str, float]:
    """What the chunking holds back in each direction, on ``pcm8k`` going up and its ideal
    24 kHz rendering coming down."""
    up = held_back_samples(CALLER_RATE, MODEL_IN_RATE, pcm8k, CALLER_CHUNK_MS)
    down = held_back_samples(MODEL_OUT_RATE, CALLER_RATE, model(relay_up(pcm8k)), MODEL_CHUNK_MS)
    up_ms, down_ms = up / MODEL_IN_RATE * 1000, down / CALLER_RATE * 1000
    return {"up": up_ms, "down": down_ms, "round_trip": up_ms + down_ms}


# ---------------------------------------------------------------- figures


def theoretical_delay_ms() -> dict[str, float]:
    """The group delay of each resampler, from its design: linear interpolation by L lags
    L - 1 output samples; the linear-phase FIR lags (taps - 1) / 2 input samples."""
    up = (MODEL_IN_RATE // CALLER_RATE - 1) / MODEL_IN_RATE * 1000
    down = (len(_DOWN_TAPS[MODEL_OUT_RATE // CALLER_RATE]) - 1) / 2 / MODEL_OUT_RATE * 1000
    return {"up": up, "down": down, "round_trip": up + down}


def measured_delay(y: np.ndarray, ref: np.ndarray, rate: int) -> float:
    """The lag (in samples, fractions included) at which ``y`` best matches ``ref``: the peak of
    their cross-correlation, interpolated band-limited to 1/32 sample, then by a parabola."""
    size = 2 * max(len(y), len(ref))  # no circular wrap
    cross = np.conj(np.fft.rfft(ref, size)) * np.fft.rfft(y, size)
    r = np.fft.irfft(cross, size * CORRELATION_UPSAMPLE)[: samples(MAX_DELAY_MS, rate) * CORRELATION_UPSAMPLE]
    i = int(np.argmax(r))
    offset = 0.0
    if 0 < i < len(r) - 1:
        left, mid, right = r[i - 1], r[i], r[i + 1]
        offset = 0.5 * (left - right) / (left - 2 * mid + right)
    return (i + offset) / CORRELATION_UPSAMPLE


def steady(x: np.ndarray, rate: int) -> np.ndarray:
    """``x`` without ``EDGE_MS`` at either end of the signal proper (the padding is cut too)."""
    edge = samples(PAD_MS + EDGE_MS, rate)
    return x[edge : len(x) - edge]


def snr_db(y: np.ndarray, ref: np.ndarray, delay: float, rate: int, gain_matched: bool = False) -> float:
    """Signal-to-noise ratio of ``y`` against ``ref`` delayed by ``delay`` samples. With
    ``gain_matched`` the reference is first scaled to fit ``y`` best, so a flat gain error
    (a filter's droop at a tone's frequency) does not count as noise."""
    want = steady(delayed(ref, delay), rate)
    got = steady(y[: len(ref)], rate)
    if gain_matched:
        want = want * (np.dot(got, want) / np.dot(want, want))
    return float(10 * np.log10(np.dot(want, want) / np.sum((got - want) ** 2)))


def sine_fit(x: np.ndarray, freqs: list[float], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of a DC term and a sine at each frequency: (amplitudes, residual)."""
    t = np.arange(len(x)) / rate
    basis = [np.ones_like(t)]
    for f in freqs:
        basis += [np.cos(2 * np.pi * f * t), np.sin(2 * np.pi * f * t)]
    a = np.stack(basis, axis=1)
    coef, *_ = np.linalg.lstsq(a, x, rcond=None)
    amplitudes = np.hypot(coef[1::2], coef[2::2])
    return amplitudes, x - a @ coef


def folded(freq: float, rate: int) -> float:
    """Where ``freq`` lands once sampled at ``rate``."""
    f = freq % rate
    return min(f, rate - f)


def thd_db(y: np.ndarray, freq: float, rate: int, harmonics: int = 4) -> tuple[float, float]:
    """(THD, THD+N) in dB below the fundamental: the harmonics 2..``harmonics`` (folded into the
    band), and everything but the fundamental and DC."""
    x = steady(y, rate)
    freqs = [freq] + [folded(k * freq, rate) for k in range(2, harmonics + 1)]
    amplitudes, _ = sine_fit(x, freqs, rate)
    _, residual = sine_fit(x, [freq], rate)
    fundamental = amplitudes[0] ** 2 / 2
    thd = np.sum(amplitudes[1:] ** 2 / 2) / fundamental
    thd_n = np.mean(residual**2) / fundamental
    return float(10 * np.log10(thd)), float(10 * np.log10(thd_n))


def gain_db(y: np.ndarray, freq: float, amplitude: float, rate: int) -> float:
    amplitudes, _ = sine_fit(steady(y, rate), [freq], rate)
    return float(20 * np.log10(amplitudes[0] / amplitude))


@dataclass(frozen=True)
class SignalFigures:
    """SNR in dB of each step on one signal, all against float references."""

    ulaw_once: float  # one μ-law encode and decode of the signal as it leaves the path: the ceiling
    up: float  # Resampler(8000, 16000) alone, on the caller's decoded samples
    down: float  # Resampler(24000, 8000) alone, on the model's 24 kHz samples
    round_trip: float
    round_trip_gain_matched: float


def in_samples(ms: float, rate: int) -> float:
    """``ms`` in samples at ``rate``, fractions kept (a delay)."""
    return ms * rate / 1000


def signal_figures(x: np.ndarray, delays_ms: dict[str, float]) -> SignalFigures:
    """SNRs for signal ``x`` (8 kHz float), each aligned by its stage's measured delay."""
    caller_pcm = pcm_of(fastpath.ulaw_to_pcm16(fastpath.pcm16_to_ulaw(pcm_bytes(x))))
    # The round trip's reference: the float signal through each step ideally (up, the model's
    # re-rendering, down), which is the signal itself, band-limited.
    ref8 = ideal_resample(
        ideal_resample(ideal_resample(x, CALLER_RATE, MODEL_IN_RATE), MODEL_IN_RATE, MODEL_OUT_RATE),
        MODEL_OUT_RATE,
        CALLER_RATE,
    )
    round_trip_delay = in_samples(delays_ms["round_trip"], CALLER_RATE)
    back = round_trip_pcm(x)
    # Each resampler alone, against the ideal resampling of its own input: the loss is its own.
    up = pcm_of(relay_up(pcm_bytes(caller_pcm)))
    model_pcm = pcm_bytes(ideal_resample(caller_pcm, CALLER_RATE, MODEL_OUT_RATE))
    down = pcm_of(relay_down(model_pcm))
    # μ-law's ceiling on the signal as it leaves the path: the path's half-sample delay takes
    # even speech that arrived as μ-law off μ-law's grid, so the last encode always costs this.
    leaving = delayed(ref8, round_trip_delay)
    return SignalFigures(
        ulaw_once=snr_db(ulaw_once(leaving), leaving, 0.0, CALLER_RATE),
        up=snr_db(
            up,
            ideal_resample(caller_pcm, CALLER_RATE, MODEL_IN_RATE),
            in_samples(delays_ms["up"], MODEL_IN_RATE),
            MODEL_IN_RATE,
        ),
        down=snr_db(
            down,
            ideal_resample(pcm_of(model_pcm), MODEL_OUT_RATE, CALLER_RATE),
            in_samples(delays_ms["down"], CALLER_RATE),
            CALLER_RATE,
        ),
        round_trip=snr_db(back, ref8, round_trip_delay, CALLER_RATE),
        round_trip_gain_matched=snr_db(back, ref8, round_trip_delay, CALLER_RATE, gain_matched=True),
    )


def measured_delays_ms(probe: np.ndarray) -> dict[str, float]:
    """Each stage's delay, by cross-correlating its output with its ideal reference on ``probe``."""
    pcm8 = pcm_bytes(probe)
    up_ref = ideal_resample(pcm_of(pcm8), CALLER_RATE, MODEL_IN_RATE)
    up = measured_delay(pcm_of(relay_up(pcm8)), up_ref, MODEL_IN_RATE)
    pcm24 = pcm_bytes(ideal_resample(probe, CALLER_RATE, MODEL_OUT_RATE))
    down_ref = ideal_resample(pcm_of(pcm24), MODEL_OUT_RATE, CALLER_RATE)
    down = measured_delay(pcm_of(relay_down(pcm24)), down_ref, CALLER_RATE)
    round_trip = measured_delay(round_trip_pcm(probe), probe, CALLER_RATE)
    return {
        "up": up / MODEL_IN_RATE * 1000,
        "down": down / CALLER_RATE * 1000,
        "round_trip": round_trip / CALLER_RATE * 1000,
    }


def response_db(freq: float) -> dict[str, float]:
    """Each stage's gain at ``freq`` (dB), measured with a tone through the compiled stages
    (no μ-law, so the gain is the resamplers' alone)."""
    x = tone(freq)
    amplitude = 32768 * 10 ** (TONE_DBFS / 20)
    up = relay_up(pcm_bytes(x))
    down = relay_down(pcm_bytes(ideal_resample(x, CALLER_RATE, MODEL_OUT_RATE)))
    back = relay_down(model(up))
    return {
        "up": gain_db(pcm_of(up), freq, amplitude, MODEL_IN_RATE),
        "down": gain_db(pcm_of(down), freq, amplitude, CALLER_RATE),
        "round_trip": gain_db(pcm_of(back), freq, amplitude, CALLER_RATE),
    }


@dataclass(frozen=True)
class Report:
    implementation: str  # relay.fastpath's: "cython" or "python"
    tone: SignalFigures
    speech: SignalFigures
    tone_thd_db: float  # after the round trip
    tone_thd_n_db: float
    ulaw_thd_n_db: float  # μ-law alone, on the same tone
    delay_ms: dict[str, float]  # measured, by stage
    theoretical_delay_ms: dict[str, float]
    held_back_ms: dict[str, float]  # by the chunking, on top of the delay
    response_db: dict[str, dict[str, float]]  # by frequency (Hz), then stage


def measure() -> Report:
    delays = measured_delays_ms(white_noise())
    tone_x, speech_x = tone(), speech()
    thd, thd_n = thd_db(round_trip_pcm(tone_x), TONE_HZ, CALLER_RATE)
    _, ulaw_thd_n = thd_db(ulaw_once(tone_x), TONE_HZ, CALLER_RATE)
    return Report(
        implementation=fastpath.IMPLEMENTATION,
        tone=signal_figures(tone_x, delays),
        speech=signal_figures(speech_x, delays),
        tone_thd_db=thd,
        tone_thd_n_db=thd_n,
        ulaw_thd_n_db=ulaw_thd_n,
        delay_ms=delays,
        theoretical_delay_ms=theoretical_delay_ms(),
        held_back_ms=held_back_ms(pcm_bytes(speech_x)),
        response_db={f"{f:g}": response_db(f) for f in RESPONSE_HZ},
    )


# ---------------------------------------------------------------- the table


def table(report: Report) -> str:
    rows = [
        ("μ-law once (ceiling)", "ulaw_once"),
        ("up 8 → 16 kHz alone", "up"),
        ("down 24 → 8 kHz alone", "down"),
        ("round trip", "round_trip"),
        ("round trip, gain matched", "round_trip_gain_matched"),
    ]
    tone_name = f"tone {TONE_HZ:g} Hz {TONE_DBFS:g} dBFS"
    lines = [
        f"Transcoding for Gemini Live (relay.fastpath: {report.implementation})",
        "",
        f"{'SNR, dB':<30}{tone_name:>24}{'speech-like':>14}",
    ]
    for label, field in rows:
        lines.append(f"  {label:<28}{getattr(report.tone, field):>24.1f}{getattr(report.speech, field):>14.1f}")
    lines += [
        "",
        f"tone after the round trip: THD {report.tone_thd_db:.1f} dB, THD+N {report.tone_thd_n_db:.1f} dB "
        f"(μ-law alone: THD+N {report.ulaw_thd_n_db:.1f} dB)",
        "",
        f"{'response, dB':<14}" + "".join(f"{f + ' Hz':>10}" for f in report.response_db),
    ]
    for stage in ("up", "down", "round_trip"):
        lines.append(f"  {stage:<12}" + "".join(f"{r[stage]:>10.2f}" for r in report.response_db.values()))
    lines += ["", f"{'delay, ms':<14}{'measured':>10}{'design':>10}{'held back':>11}"]
    for stage in ("up", "down", "round_trip"):
        measured, design = report.delay_ms[stage], report.theoretical_delay_ms[stage]
        lines.append(f"  {stage:<12}{measured:>10.4f}{design:>10.4f}{report.held_back_ms[stage]:>11.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transcode_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    args = parser.parse_args(argv)
    report = measure()
    print(json.dumps(asdict(report), indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
