"""relay: a low-latency bridge between Twilio Media Streams and speech-to-speech AI."""

__version__ = "0.1.0"
