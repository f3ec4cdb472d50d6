"""shoestring.analyze"""
