"""bcmanager: coordinates GPU basecalling of a nanopore run while it is still sequencing."""

__version__ = "0.1.0"
