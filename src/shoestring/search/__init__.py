"""shoestring.search"""
