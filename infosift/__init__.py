"""infosift: information-aware data selection for SFT."""
