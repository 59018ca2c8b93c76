"""fsrvp"""
