"""Connectors: components that end one pipeline and feed another, turning one signal into another."""
