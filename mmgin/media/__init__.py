"""Media decoding and writing through PyAV: audio at a rate, video frames at an fps and size."""
