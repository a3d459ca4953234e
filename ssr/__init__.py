"""ssr: silent speech recognition from surface EMG."""

__version__ = "0.1.0"
