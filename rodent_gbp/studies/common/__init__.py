"""What several studies share (and nothing of the main job's, which is in the core)."""
