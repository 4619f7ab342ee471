"""Benchmarks of our broker side by side with mosquitto and amqtt (issue 4): ``python -m bench``.

See docs/benchmarks.md for the method and the latest figures.
"""
