"""Sources: where records come from. Each yields ``LineBatch`` blocks of whole lines."""
