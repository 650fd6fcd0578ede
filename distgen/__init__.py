"""distgen: compositional power traces of LLM-inference fleets."""

__version__ = "0.1.0"
