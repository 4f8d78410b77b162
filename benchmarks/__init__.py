"""Benchmark code kept out of the library: the peer engines' adapters (:mod:`benchmarks.peers`,
:mod:`benchmarks.peer_grammars`) and the scripts that write ``benchmarks/results``."""
