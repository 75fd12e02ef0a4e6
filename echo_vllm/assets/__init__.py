"""Offline assets: the target model (prepare-model) and the prompt sets."""
