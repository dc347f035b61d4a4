"""Ensembles: select members from a search's checkpoints and predict at study level."""
