"""hparr: are the hyperplane arrangements of a trained ConvNet's layers biased, and are those layers critical?"""

__version__ = "0.1.0"
