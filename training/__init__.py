"""The personalisation engine: photo checks, trainers, artifacts, composition, generation.

Importing ``training`` (and ``training.faces``) must stay torch-free: the bot imports the selfie checks.
Heavy modules (trainers, compose, generate) are imported by their full path.
"""
