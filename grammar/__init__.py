"""The text-IR grammar (qir.lark), shipped as package data."""
