"""mmgin: MMAudio video-to-audio training as a declarative gin experiment system."""

__version__ = "0.1.0"
