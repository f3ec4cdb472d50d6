"""shoestring.data"""
