"""Labels: a user's named, optionally coloured tags, which tasks carry (`task_labels`)."""
