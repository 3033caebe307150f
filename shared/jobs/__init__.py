"""Jobs: taking uploads in, scheduling and processing their items, progress, retention."""
