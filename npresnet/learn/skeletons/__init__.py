"""The files ``python -m npresnet.learn start NAME`` writes: one skeleton per exercise.

Each has the signatures, the shapes, the equation to derive in a sentence or two, and bodies that
raise ``NotImplementedError`` (the grader's "not written yet"). They are copied as text, never
imported by npresnet.
"""
