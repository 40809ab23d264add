"""Feature stores on disk, the datasets that read them, the mixture and the batch loader."""
