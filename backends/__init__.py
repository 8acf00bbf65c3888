"""Broker adapters. Each module imports only its own client library, and only when
its URL scheme is used (see ``bus.registry``)."""
