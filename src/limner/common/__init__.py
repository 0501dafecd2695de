"""The bottom layer: jobs every other package shares (the cache, atomic files, hashing, progress, typed
configs). It imports nothing else of limner."""
