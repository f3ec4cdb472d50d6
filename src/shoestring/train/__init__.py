"""shoestring.train"""
