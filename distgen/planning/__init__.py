"""Planner answers from a finished run folder (``distgen analyze`` / ``distgen report``).

* :mod:`distgen.planning.options`: what the commands can be told (stdlib only).
* :mod:`distgen.planning.run`: reads the run (:mod:`distgen.io.runoutput`), computes every
  figure with :mod:`distgen.analysis` and returns one JSON-ready document.
"""
