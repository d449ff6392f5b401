"""Loss maths as pure functions of tensors (no distributed calls, no devices)."""
