module demo.local/database

go 1.19
