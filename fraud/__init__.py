"""The reference project: card fraud on generated data (generator, contract, transformations, demo)."""
