"""dcerpc"""
