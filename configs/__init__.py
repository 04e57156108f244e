"""mmseg configs shipped with alseg (package data ``alseg.configs``; ``alseg configs`` lists them).

A config argument that is not a file is looked up here by name: ``alseg train demo_unet_tiny ...``.
"""
