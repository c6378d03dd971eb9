"""softloc: visual localization by image retrieval with soft contrastive learning."""

__version__ = "0.1.0"
