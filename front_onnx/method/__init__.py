"""The FRONT method on analyzed graphs: extract a learngene, plan a target, materialize its tensors."""
