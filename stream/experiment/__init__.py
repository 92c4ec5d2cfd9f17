"""Online experiments: which arm serves each user (``arms``) and how the arms compare (``report``)."""
