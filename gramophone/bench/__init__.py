"""Benchmarks behind ``gramophone bench``: each module measures one thing and returns
records ``{"benchmark", "system", "metric", "value", "unit", **parameters}``.

Nothing here is imported by ``import gramophone``; frameworks and peer engines load
inside the functions that need them.
"""
