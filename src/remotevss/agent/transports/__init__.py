"""agent/transports"""
