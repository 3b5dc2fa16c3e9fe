"""Offline data and measures shared by training and evaluation (neither imports the other;
serving imports neither): public data sets (`datasets`), the leave-last-two-out split
(`split`), ranking metrics (`metrics`) and the served pipeline built over a data set
(`pipeline`)."""
