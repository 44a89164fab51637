"""The project: its typed config, copies, `mlcycle init` scaffolding and contract inference."""
