"""Ollama through its HTTP API: the engine (`engine`), the `ollama serve` we may start
(`server`), the HTTP API helpers (`api`) and our server's log (`log`)."""

from vramphysics.engines.ollama.engine import OllamaEngine, engine_timings, normalize_model_name

__all__ = ["OllamaEngine", "engine_timings", "normalize_model_name"]
