// The lesson's database service, unchanged but for the port, which PORT may override
// (default 8080) so the podman suite can run it on the host network beside other servers.
package main

import (
	"encoding/json"
	"net/http"
	"os"
)

func queryHandler(w http.ResponseWriter, r *http.Request) {
	data := map[string]string{
		"message": "Data from database",
		"records": "42",
	}
	json.NewEncoder(w).Encode(data)
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/query", queryHandler)
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		panic(err)
	}
}
