"""Datasets: the table of places, images, tuples, readers and the procedural town."""

from softloc.data.places import PlacesError, PlaceTable, read_places, write_places

__all__ = ["PlaceTable", "PlacesError", "read_places", "write_places"]
