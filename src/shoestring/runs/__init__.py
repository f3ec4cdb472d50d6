"""shoestring.runs"""
