"""npresnet's own solutions to the exercises of ``python -m npresnet.learn``, one file each.

``python -m npresnet.learn solution NAME`` prints one once the learner's file passes (or with
``--anyway``). The grader checks them like any learner's file: against npresnet.functional and
finite differences (tests/test_learn.py).
"""
