"""Data contracts: what a table must satisfy before a row may become a feature."""
