"""The transcoding path for Gemini Live (μ-law 8 kHz → 16 kHz → model → 24 kHz → 8 kHz μ-law)
keeps its quality and delay: ``bench/transcode_quality.py``'s figures, held to floors, and its
measuring tools checked on signals whose answer is known. Nothing here is timed.

The figures are deterministic (integer codec, float64 references). The floors sit 1 to 2 dB
under what the bench measured, each noted beside it, so that a change to either resampler
that costs quality fails here while a change to the speech synthesis or to numpy's FFT does
not. The bench README has the table.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from bench import transcode_quality as tq
from relay import _fastpath_py, fastpath
from relay.sim.audio import speak

CALLER_FRAME = 160  # μ-law bytes in one 20 ms Twilio frame


@pytest.fixture(scope="module")
def report() -> tq.Report:
    return tq.measure()


# -- the measuring tools -----------------------------------------------------------------------------


def test_ideal_resampling_up_rerendered_and_down_gives_the_signal_back() -> None:
    x = tq.white_noise(0.2)
    up = tq.ideal_resample(x, 8000, 16000)
    rerendered = tq.ideal_resample(up, 16000, 24000)
    assert (len(up), len(rerendered)) == (2 * len(x), 3 * len(x))
    np.testing.assert_allclose(tq.ideal_resample(rerendered, 24000, 8000), x, atol=1e-6)


def test_the_cross_correlation_finds_a_fractional_delay() -> None:
    x = tq.white_noise(0.2)
    assert tq.measured_delay(tq.delayed(x, 3.3), x, 8000) == pytest.approx(3.3, abs=0.01)


def test_thd_is_that_of_the_harmonics_put_in() -> None:
    t = np.arange(8000) / 8000
    x = tq.padded(10000 * np.sin(2 * np.pi * 1004 * t) + 100 * np.sin(2 * np.pi * 2008 * t))
    thd, thd_n = tq.thd_db(x, 1004, 8000)
    assert thd == pytest.approx(-40.0, abs=0.01)
    assert thd_n == pytest.approx(-40.0, abs=0.01)


# -- quality ------------------------------------------------------------------------------------------


def test_ulaw_alone_scores_what_g711_does(report: tq.Report) -> None:
    # G.711 μ-law holds about 35-38 dB over its range; measured 37.2 on both signals.
    assert 35.0 < report.tone.ulaw_once < 39.0
    assert 35.0 < report.speech.ulaw_once < 39.0


def test_the_round_trip_on_the_tone_loses_only_the_upsamplers_droop(report: tq.Report) -> None:
    # Measured 28.0 dB: the linear 8 → 16 kHz interpolation is -0.34 dB at 1 kHz, an error of
    # 3.8 % of the signal (-28.3 dB) that μ-law's -37 dB noise sits under. Floor 27 dB.
    assert report.tone.round_trip > 27.0
    # With that gain matched, what is left is noise: measured 36.0 dB, 1.2 dB under one μ-law
    # pass although the trip has two. Floor: within 3 dB of μ-law's own.
    assert report.tone.round_trip_gain_matched > report.tone.ulaw_once - 3.0
    thd, thd_n = report.tone_thd_db, report.tone_thd_n_db
    assert thd < -65.0  # measured -71.9 dB
    assert thd_n < -35.0  # measured -36.0 dB; μ-law alone -37.3 dB


def test_the_round_trip_on_speech_stays_near_ulaw(report: tq.Report) -> None:
    assert report.speech.round_trip > 30.0  # measured 31.3 dB (μ-law alone: 37.2)


def test_the_loss_is_in_the_upsampler_not_the_decimating_filter(report: tq.Report) -> None:
    # Measured: up 25.3 (tone: droop and the images above 4 kHz) and 32.1 (speech); down 57.9
    # and 38.3 (speech: the filter's roll-off from 3.4 kHz on the noise in its top band).
    assert report.tone.up > 24.0
    assert report.speech.up > 31.0
    assert report.tone.down > 56.0
    assert report.speech.down > 37.0
    assert report.tone.up < report.tone.down and report.speech.up < report.speech.down


def test_the_response_droops_as_the_designs_say(report: tq.Report) -> None:
    # Linear interpolation by 2: (1 + cos(2 pi f / 16000)) / 2; the FIR: its docstring's figures.
    for freq, stages in report.response_db.items():
        linear = 20 * np.log10((1 + np.cos(2 * np.pi * float(freq) / 16000)) / 2)
        assert stages["up"] == pytest.approx(linear, abs=0.05), freq
    assert report.response_db["3000"]["down"] == pytest.approx(-0.02, abs=0.05)
    assert report.response_db["3400"]["down"] == pytest.approx(-1.2, abs=0.05)


# -- delay -------------------------------------------------------------------------------------------


def test_the_theoretical_delay_is_the_filters_group_delay() -> None:
    # 1 sample at 16 kHz (linear interpolation by 2) + (49 - 1) / 2 samples at 24 kHz (the FIR)
    assert tq.theoretical_delay_ms() == {"up": 0.0625, "down": 1.0, "round_trip": 1.0625}


def test_the_measured_delay_is_the_theoretical_one_within_a_sample(report: tq.Report) -> None:
    sample_ms = {"up": 1000 / 16000, "down": 1000 / 8000, "round_trip": 1000 / 8000}
    for stage, ms in report.theoretical_delay_ms.items():
        assert abs(report.delay_ms[stage] - ms) < sample_ms[stage], stage


def test_the_chunking_holds_nothing_back(report: tq.Report) -> None:
    assert report.held_back_ms == {"up": 0.0, "down": 0.0, "round_trip": 0.0}


# -- the path itself ---------------------------------------------------------------------------------


def caller_audio() -> bytes:
    """What a caller sends: speech, then the tone (μ-law; not a whole number of frames)."""
    return speak("hello there") + fastpath.pcm16_to_ulaw(tq.pcm_bytes(tq.tone(seconds=0.3)))


def test_the_compiled_path_equals_the_python_twin_bit_for_bit() -> None:
    compiled = pytest.importorskip("relay._fastpath", reason="compiled hot path not built")
    ulaw = caller_audio()
    assert tq.relay_round_trip(ulaw, compiled) == tq.relay_round_trip(ulaw, _fastpath_py)
    pcm8 = fastpath.ulaw_to_pcm16(ulaw)
    assert tq.relay_up(pcm8, compiled) == tq.relay_up(pcm8, _fastpath_py)
    pcm24 = tq.model(tq.relay_up(pcm8))
    assert tq.relay_down(pcm24, compiled) == tq.relay_down(pcm24, _fastpath_py)


@pytest.mark.parametrize("impl", [fastpath, _fastpath_py], ids=["facade", "twin"])
def test_each_resampler_carries_its_state_across_the_calls_chunks(impl: ModuleType) -> None:
    pcm8 = fastpath.ulaw_to_pcm16(caller_audio())
    pcm24 = tq.model(tq.relay_up(pcm8))
    assert tq.relay_up(pcm8, impl) == impl.Resampler(8000, 16000).process(pcm8)
    assert tq.relay_down(pcm24, impl) == impl.Resampler(24000, 8000).process(pcm24)
    # and on chunks of 7 samples, which split the stream off the decimation's 3-sample grid
    down = impl.Resampler(24000, 8000)
    assert tq.streamed(down.process, pcm24, 2 * 7) == impl.Resampler(24000, 8000).process(pcm24)


def test_the_round_trip_gives_the_caller_as_much_audio_as_it_sent() -> None:
    ulaw = caller_audio()
    assert len(ulaw) % CALLER_FRAME != 0  # a last frame cut short too
    assert len(tq.relay_round_trip(ulaw)) == len(ulaw)
