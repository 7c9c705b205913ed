"""The paper's mathematics and the channel surgery; depends on torch only."""
