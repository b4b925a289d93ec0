"""``retina-otel observe``: live flows from an agent's Observer API (Hubble's), as hubble observe shows them."""
