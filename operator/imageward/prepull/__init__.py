"""Pre-pulling: plan which layers each node holds, and put them there."""
