"""wdiv: weight spectra of fine-tuned networks under data diversity and classic regularisers."""

__version__ = "0.1.0"
