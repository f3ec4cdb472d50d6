"""shoestring.eval"""
