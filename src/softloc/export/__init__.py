"""Files other tools read: hloc's global-feature HDF5 and retrieval pairs (:mod:`.hloc`)."""
