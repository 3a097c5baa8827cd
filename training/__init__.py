"""glimpse's training package: data sets, preprocessing, models, fit loop, archiving."""
